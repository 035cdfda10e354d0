"""What the report stages show: the leaderboard page template (`leaderboard.html`, package data) and the
helpers the figure notebooks call (`notebooks.py`). Plotting and page layout only, no stage logic."""

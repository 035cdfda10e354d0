"""diffrepro shared library: data, DiT backbone, token mixers, diffusion, training, metrics.

Nothing in `common/` reads a params file or `dvc.yaml`: the stage CLIs in `pipelines/` do that and
pass typed configs (`common.config`) down.
"""

"""From raw slides to patch features: OpenSlide reading (`reader`), thumbnails, tissue
segmentation (`tissue`), tiling (`tiling`), threaded patch reading (`patch_stream`), the
extraction job writing TRIDENT-layout files (`extract`, `trident_h5`) and heatmaps (`heatmap`).

Modules import openslide, torch and h5py inside the functions that need them.
"""

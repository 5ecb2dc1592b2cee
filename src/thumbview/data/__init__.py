"""Datasets: a folder of thumbnails with views (Hugging Face imagefolder) or Parquet shards.

The API is in the modules (`thumbview.data.dataset.load_dataset`, `.shards.pack`,
`.synth.make_synthetic`, ...); the package exports nothing so that importing one of them
never imports the others' dependencies (pyarrow, OpenCV).
"""

__all__: list[str] = []

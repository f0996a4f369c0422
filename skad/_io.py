"""Image files: what skad reads as an image, without importing torch.

The datasets, the CLI, the texture folders and the detectors' lazy path
reader all take their list of image file endings from here.
"""

__all__ = ["IMAGE_EXTENSIONS"]

#: File name endings read as images, everywhere in skad (folders, textures, the CLI).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

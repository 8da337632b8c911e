"""The torch embedding worker: images -> CNN feature vectors, words -> word vectors. No gRPC here."""

from embedder.errors import AssetMissing, BadImage, EmbedderError, ImageTooLarge, UnknownWord
from embedder.image import IMAGE_MODEL, ImageEmbedder, decode_image
from embedder.words import WORD_MODEL, WordVectors

__all__ = [
    "IMAGE_MODEL",
    "WORD_MODEL",
    "AssetMissing",
    "BadImage",
    "EmbedderError",
    "ImageEmbedder",
    "ImageTooLarge",
    "UnknownWord",
    "WordVectors",
    "decode_image",
]

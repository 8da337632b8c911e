"""What the embedding worker refuses. The server maps each class to a gRPC status in one table."""


class EmbedderError(ValueError):
    """Input the embedder cannot turn into a vector."""


class BadImage(EmbedderError):
    """Bytes that are not a decodable image of a supported format."""


class ImageTooLarge(EmbedderError):
    """An image whose pixel count is over the configured limit (decompression-bomb guard)."""


class ImageBusy(EmbedderError):
    """Too many pixels are being decoded at once for another image to start in time."""


class UnknownWord(EmbedderError, LookupError):
    """A word that the word-vector table does not hold."""

    def __init__(self, word: str) -> None:
        shown = repr(word) if len(word) <= 100 else f"{word[:100]!r}... ({len(word):,} characters)"
        super().__init__(f"word {shown} is not in the word-vector vocabulary")
        self.word = word


class AssetMissing(RuntimeError):
    """A model or data file that the project's setup installs is not on this machine."""

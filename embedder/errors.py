"""What the embedding worker refuses. The server maps each class to a gRPC status in one table."""


class EmbedderError(ValueError):
    """Input the embedder cannot turn into a vector."""


class BadImage(EmbedderError):
    """Bytes that are not a decodable image of a supported format."""


class ImageTooLarge(EmbedderError):
    """An image whose pixel count is over the configured limit (decompression-bomb guard)."""


class UnknownWord(EmbedderError, LookupError):
    """A word that the word-vector table does not hold."""

    def __init__(self, word: str) -> None:
        super().__init__(f"word {word!r} is not in the word-vector vocabulary")
        self.word = word


class AssetMissing(RuntimeError):
    """A model or data file that the project's setup installs is not on this machine."""

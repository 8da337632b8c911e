"""gRPC servicers: decode the request, call the embedder, collection or index, encode the response."""

from server.servicers.collections import CollectionServicer
from server.servicers.embed import EmbedServicer
from server.servicers.info import ServerServicer
from server.servicers.search import SearchServicer
from server.servicers.tag import TagServicer

__all__ = ["CollectionServicer", "EmbedServicer", "SearchServicer", "ServerServicer", "TagServicer"]

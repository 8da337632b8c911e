"""Batch ingestion on Ray Data: photos in, vectors out, to a visionsearch collection, Parquet or Milvus.

No gRPC server code lives here: the job is a client of the server (``visionsearch_client``) and embeds with
the server's own network and preprocessing (``embedder.image``), so its vectors equal the server's Embed.
"""

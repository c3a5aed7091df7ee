"""Persistence: SQLite (the truth), the vector index boundary and its Chroma implementation, blobs."""

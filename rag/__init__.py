"""Retrieval, reranking, routing and generation, wired from one settings object."""

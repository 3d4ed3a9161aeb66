"""Turning folders of documents into chunks in Qdrant, incrementally."""

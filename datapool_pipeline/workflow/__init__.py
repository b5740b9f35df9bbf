"""The pipeline's steps as plain functions (discovery, frames, embeddings, selection, commit).

The Dagster assets are thin wrappers around these; they take a `log` callback for progress.
"""

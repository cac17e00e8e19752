"""Tile records, shard IO and tile sources."""

"""Analytics over the exported events: the hourly compaction to Parquet, the saved
queries, and the DuckDB runner behind `quiver events`."""

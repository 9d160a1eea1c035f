"""The query engine: resolve a query to a vector, search an index, attach metadata; prototypes; heatmaps."""

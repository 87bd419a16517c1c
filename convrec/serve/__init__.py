"""`convrec serve`: an OpenAI-compatible recommender server with catalog-constrained decoding."""

"""Scoring lists: the one metric (`metrics`: judging items, Recall/NDCG, the three protocols),
`evaluate` (predictions -> per-sample scores and tables), and bootstrap intervals (`intervals`)."""

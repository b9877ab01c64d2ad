"""JUSTICE-schema data: schema and cleaning, splits, baselines, rationales, the run folder's data files."""

"""`streamer batch`: many clips over a Ray cluster, one output per input, nothing lost.

inputs  -> the list of clips and their output names (no Ray)
plan    -> what each clip becomes: one whole-clip task or keyframe segments (no Ray)
segment -> the reading and writing ends of a segment, and the lossless join (no Ray)
work    -> one task through the usual file pipeline (job.build_processing + Pipeline)
driver  -> Ray: actors, retries, progress, summary (imports ray)
"""

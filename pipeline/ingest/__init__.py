"""From a source to a training pack: fetch, safe extraction, decoding, crop, pad, dedupe, pack."""

"""Images in: folder scanning, decoding, the decode cache, the built-in glyphs, Lightning data."""

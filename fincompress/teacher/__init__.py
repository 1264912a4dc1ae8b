"""FinCompress stage: teacher."""

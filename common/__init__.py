"""What every layer shares: atomic local writes, the content hash, figure saving (no imports of the project)."""

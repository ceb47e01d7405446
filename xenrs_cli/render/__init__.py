"""Human output (rich). Imported only for ``--format table``; the core never imports it."""

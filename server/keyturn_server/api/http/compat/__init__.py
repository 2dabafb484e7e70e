"""The specification's REST API (/api/key-management) on Keyturn's servicers."""

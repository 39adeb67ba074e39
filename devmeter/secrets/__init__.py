"""Secret inspection of what agents send: pure detection, new-content extraction, policy.

scan.py finds secrets in text, new_content.py asks the wire-format registry for the
user's new content in each request (WireFormat.new_turn), policy.py decides
warn/block/redact from `[secrets]` in config.toml.
Nothing here keeps a secret: a Finding holds the secret only in memory, for redaction;
what is stored or shown is its masked preview and keyed fingerprint.
"""

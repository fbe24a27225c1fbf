"""FIX 4.2/4.4: codec, data dictionaries, sans-I/O session, file store, typed orders."""

"""A mutation fuzzer over the file readers (``make fuzz SECONDS=N``)."""

"""The national medical insurance platform's message format, shared by the terminal and the virtual
platform (``central/``) and nothing else: the envelope, msgids, amounts, transaction codes and the
gateway's request signature (docs/platform.md). It imports neither side.
"""

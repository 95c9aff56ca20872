"""Slice sandbox: a local stand-in for the Slice OAuth 2.0 server and REST API.

Built on django-oauth-toolkit, so the OAuth side is a real authorization server.
Used as the peer server in live-server tests and as the example project's demo.
"""

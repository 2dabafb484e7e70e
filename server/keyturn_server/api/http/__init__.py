"""HTTP/JSON: the transcoded API, Server-Sent Events, the specification's REST API and
OpenAPI, on aiohttp in the server's own event loop."""

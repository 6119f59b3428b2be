"""The web console: the server-rendered pages coordinators, data owners and observers use."""

"""Registration authorities (issue 15): nodes that hold no CA key, authenticate their own
requesters and forward each request upstream (to the CA or a parent RA) over mutual TLS
whose client key stays in the token, with a signed hop assertion per RA on the path.

Floor 10.5: may import provisioners and below; web, ops and cli import it; acme does not.
"""

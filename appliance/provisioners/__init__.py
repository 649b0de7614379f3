"""Authorization: turning a credential (one-time token, certificate) into who may get what."""

"""Operations that change state: each one does its work and writes its audit event together."""

-- An invitation proves its address only when its token reached the address
-- itself (sent by mail). A token handed back to the inviter (no SMTP) makes
-- whoever uses it a member of that one tenant, and proves nothing to others.
ALTER TABLE invitations ADD COLUMN proves_address BOOLEAN NOT NULL DEFAULT FALSE;

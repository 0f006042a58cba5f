-- The forum's first schema: members, posts and polls.
CREATE TABLE users (name TEXT PRIMARY KEY);
INSERT INTO users (name) VALUES ('ada'), ('grace');
CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL);
CREATE TABLE polls (id INTEGER PRIMARY KEY, question TEXT NOT NULL);

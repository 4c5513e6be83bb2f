-- A running process's row is rewritten with every batch of its output (byte counts and
-- version). Those columns are in no index, so PostgreSQL can write the new version on the
-- same page and skip every index (a HOT update), but only where the page has room; at the
-- default fillfactor of 100 every page is full once written, and each update moved the row
-- to another page and added an entry to each of the table's six indexes. Leaving 30 % of
-- each page free made the projection's share of a transaction of 1,000 output events five
-- times cheaper (docs/benchmarks.md, append-small). Pages written before this keep no room
-- until the table is rewritten.
ALTER TABLE processes SET (fillfactor = 70);

/* pgfleet:replica */ SELECT * FROM t; -- trailing

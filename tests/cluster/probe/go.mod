module sortie.local/probe

go 1.22

module sortie.local/pause

go 1.22

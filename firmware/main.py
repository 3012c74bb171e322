# Runs after boot.py on every reset: the node runtime (firmware/node.py).
import node

node.main()

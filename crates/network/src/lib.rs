//! The pod network (the CNI bridge plugin's and flannel's role) and, later, the service proxy
//! and cluster DNS: a network namespace per pod with loopback and an IP on a node-local bridge.

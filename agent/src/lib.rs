//! kvmotion's node agent: drives the local libvirtd for migrations, publishes
//! the node's `Hypervisor` inventory and serves the API the controller calls.

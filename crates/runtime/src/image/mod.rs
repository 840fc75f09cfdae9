//! OCI images: import, pull, content store, unpacked layers, garbage collection.

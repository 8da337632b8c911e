"""The visionsearch gRPC server: servicers, configuration and lifecycle. No maths here (see kernels/)."""

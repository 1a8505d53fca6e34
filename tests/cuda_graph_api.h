/* Declarations of the CUDA driver API calls kedge's CUDA graph path makes, as cuda.h
   (CUDA 11.4 and later) declares them. The handle types are opaque pointers:
   typedef struct CUstream_st *CUstream; typedef struct CUgraph_st *CUgraph;
   typedef struct CUgraphExec_st *CUgraphExec; CUresult and the enums are C ints. */
CUresult CUDAAPI cuStreamBeginCapture_v2(CUstream hStream, CUstreamCaptureMode mode);
CUresult CUDAAPI cuStreamEndCapture(CUstream hStream, CUgraph *phGraph);
CUresult CUDAAPI cuStreamIsCapturing(CUstream hStream, CUstreamCaptureStatus *captureStatus);
CUresult CUDAAPI cuGraphInstantiateWithFlags(CUgraphExec *phGraphExec, CUgraph hGraph, unsigned long long flags);
CUresult CUDAAPI cuGraphLaunch(CUgraphExec hGraphExec, CUstream hStream);
CUresult CUDAAPI cuGraphExecDestroy(CUgraphExec hGraphExec);
CUresult CUDAAPI cuGraphDestroy(CUgraph hGraph);
CUresult CUDAAPI cuGetErrorName(CUresult error, const char **pStr);

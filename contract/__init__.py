"""The contract between fcnseg's layers, written once.

Training, export, serving clients, the development server and the Beam jobs all speak in
these names. Nothing here imports TensorFlow (only the standard library, numpy and Pillow),
so a client or a Beam worker can learn a signature name or find the newest export without
loading a 500 MB runtime.

    contract.names     signature and tensor names, the ignore label, message limits
    contract.layout    an export's folders and files, versions and the one rule for "newest"
    contract.records   ExportMetadata and RunConfig: typed records that validate themselves
    contract.files     which file names are images (one list for every reader)
    contract.kitti     KITTI road file-name rules
"""

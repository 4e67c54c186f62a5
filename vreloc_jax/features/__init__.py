"""Video files → the benchmark's C3D features, in JAX.

  python -m vreloc_jax.features --videos=DIR_OR_FILES --weights=FILE --pca=FILE --out=DIR
  python -m vreloc_jax.localize --model=M --query=clip.mp4:3-7.5 --reference=long.mp4 \
      --weights=FILE --pca=FILE

The benchmark's features (ActivityNet Challenge 2016, "C3D features"; Feng et al.'s
re-localization split reads them, ``split_feat.py``) are C3D fc7 activations of 16-frame
clips taken every 8 frames, by the Sports-1M model of Tran et al. (ICCV 2015), reduced to
500 dimensions by ActivityNet's PCA. The path, module by module:

* `video`: PyAV decoding and C3D's preprocessing (frame rate, BGR, 171 × 128 bilinear
  resize, 16-frame clips, centre 112 × 112 crop at rows 8, columns 29);
* `mean`: the mean clip subtracted (C3D's Sports-1M mean from a file, or a stand-in);
* `c3d`: the network in Flax (conv1 … conv5b, Caffe's ceil-mode pooling, fc6, fc7 + ReLU);
* `weights`: the Sports-1M weights from c3d-keras' HDF5 files (TensorFlow- and
  Theano-ordered), checked layer by layer;
* `pca`: ActivityNet's ``PCA_activitynet_v1-3.hdf5`` (4096 → 500);
* `extractor`: all of it as one jit-compiled program, data-parallel over the devices;
* `store`: the output directory in the benchmark's layout (resumable);
* `inputs`: video files as localize's query and reference;
* `progress`: the progress line.

Each module's docstring names its sources (file and line of the C3D release, the
converters, the PCA's documentation). What could not be checked here: the published
weights' and PCA's numbers (no download from this machine), so no feature of ours was
compared with ActivityNet's; the Sports-1M mean clip (its file is absent from the snapshot
of the C3D repository; `mean` uses a stand-in unless ``--mean`` is given); the frame rate
and decoder ActivityNet used (the videos' own rate is assumed, from DAPs' "extracted
densely for all the video frames" and Feng et al.'s ``n_frames // 16 == n_feat`` check).
WORKSPACE.md, "Video files", has the full account.
"""

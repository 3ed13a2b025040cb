"""Using a trained student: ``stream`` (clips of whole videos in bounded memory, batched across videos and
windows), ``inputs`` (files, folders, list files), ``runner`` (opening a student, a sharded pass with a
progress bar), ``predict`` (classes per video or window, zero-shot), ``embed`` (feature files and nearest-video
search), ``export`` (ONNX, torch.export, folder), ``report`` (the HTML page)."""

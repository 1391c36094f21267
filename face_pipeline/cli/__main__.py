from face_pipeline.cli import main

main()

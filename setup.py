from pathlib import Path

from setuptools import find_packages, setup

setup(
    name='unas_zoo',
    version='0.1.0',
    description='UNAS (Vahdat et al., CVPR 2020) architecture search and its architecture zoo as timm models',
    long_description=Path(__file__).with_name('README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['unas_zoo', 'unas_zoo.*']),
    package_data={'unas_zoo': ['genotypes/*.yaml']},
    python_requires='>=3.10',
    install_requires=[
        # We build on timm internals (EfficientNet builder, build_model_with_cfg, timm.task): keep a tested range.
        'timm>=1.0.20,<1.1',
        'torch>=2.4',
        'torchvision>=0.19',
        'fvcore>=0.1.5',
        'safetensors>=0.4',
        'huggingface-hub>=0.23',
        'pyyaml>=6.0',
    ],
    extras_require={
        'demo': ['scikit-learn>=1.3', 'matplotlib>=3.7'],
        'export': ['onnx>=1.16', 'onnxruntime>=1.18'],
        # The export and ORT-latency tests run in CI too, so the test extra carries the export packages.
        'test': ['pytest>=7', 'scikit-learn>=1.3', 'matplotlib>=3.7', 'onnx>=1.16', 'onnxruntime>=1.18'],
    },
)
